"""Integrations with training frameworks; each imports its framework, so
import the one you use (``agentfly_min.integrations.verl``) explicitly."""
