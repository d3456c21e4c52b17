"""Rollout side: vLLM engines that generate two-attempt traces and receive weights."""
