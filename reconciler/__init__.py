"""reconciler: keeps customer balances honest.

Finds every customer whose cached ``customers.balance`` differs from the SUM of their ledger
entries, explains and records each drift as a task, and corrects it through the one balance
core (:mod:`reconciler.balances`). This package never imports Airflow.
"""

__version__ = "0.1.0"
