"""Test support: throwaway databases, real processes, bounded waiting."""
