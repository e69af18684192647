"""Suite-wide JAX settings: float32 as users run it, no silent broadcasting."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
