"""Pure vendor protocols: each module owns one vendor's endpoints, answers, states and auth flow."""
