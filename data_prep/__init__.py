"""One script per dataset (run as `python data_prep/<name>.py`); a package so tests import them directly."""
