"""``python -m dlpl_jax.augment --show [--out PATH] [--n 8] [--seed 0] [--data_dir DIR]``:
the PNG grid of :mod:`dlpl_jax.augment.show`."""

from dlpl_jax.augment import show

if __name__ == "__main__":
  show.main()
