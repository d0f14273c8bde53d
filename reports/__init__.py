"""reports: results -> pandas; claims and verdicts; tables; plots; baselines."""
