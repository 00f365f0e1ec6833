"""Console scripts: `gsm` (`main`), `gsm-report` (`report`), `gsm-advise` (`advise`), and
`python -m gsm.bench` (`bench`)."""
from gsm._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {"gsm.cli.main": ("run_job", "main")})
