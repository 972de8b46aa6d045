"""What an operator watches: Prometheus metrics (``metrics.py``), structured logs (``logs.py``)."""
