"""Learner side: DeepSpeed ranks that apply the SCoRe loss and publish weights."""
