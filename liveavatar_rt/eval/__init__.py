"""Long-horizon evaluation: `liveavatar-rt eval` (see cli.py).

clips.py (the clip-set manifest, looped audio + truth), metrics.py (colour, identity, flicker),
trend.py (linear trend + significance), longrun.py (the streaming run, window rows),
output.py (CSV, JSON summary, PNG), lipsync.py (mouth opening and lip-sync correlation).
"""
