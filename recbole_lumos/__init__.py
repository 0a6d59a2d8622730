"""recbole-lumos: LUMOS and federated sequential recommendation as a RecBole plugin.

Importing the package applies the RecBole workarounds in :mod:`recbole_lumos.compat`.
"""

from recbole_lumos import compat  # noqa: F401  (must run before RecBole is used)

__version__ = "0.1.0"
