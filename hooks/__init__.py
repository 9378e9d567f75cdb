"""Entry points for git and pre-commit hooks (checksum verification, pre-push); they call the
``cas`` library and hold no logic of their own. Installed as ``cas.hooks``."""
