"""Losses: supervised (`supervised`), self-supervised view consistency (`selfsup`) and the optical flow it uses (`flow`, `flow_lk`, `flow_raft`)."""
