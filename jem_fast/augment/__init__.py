"""jem_fast.augment: batched augmentation and masking (placeholder, replaced at merge)."""
