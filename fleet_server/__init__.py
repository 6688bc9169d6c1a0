"""Fleet server: device registry, bundle registry, staged rollouts and drift."""
