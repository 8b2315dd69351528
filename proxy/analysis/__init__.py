"""Reading the ledger to explain spend: why it changed (``explain``), what a proposed policy would have done
(``whatif``), what history costs at another price table (``reprice``), and one HTML page of it all
(``report``). Every command reads SQLite or PostgreSQL through ``db.LedgerDB`` with the same SQL."""
