"""Tenancy: who is calling (identity), what they may use (access), how much (quotas), in what
order when the engines are full (fair queue), and what each tenant got (metrics)."""
