"""trilate's serving code: pure cores (tokenisation, encoders, MaxSim, repository builder) and the thin
Triton Python-backend adapters in ``python_backend_models.triton`` that the generated ``model.py`` shims
load."""
