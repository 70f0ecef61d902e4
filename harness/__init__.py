"""What the tests and the benchmarks both drive: throwaway databases, real processes, outbox rows, waiting.

Not shipped with the product (only ``shared``, ``order_service`` and ``invoice_worker`` are packaged);
``tests/`` and ``bench/`` import it, and it imports no test code.
"""
