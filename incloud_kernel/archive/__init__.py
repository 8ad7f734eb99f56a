"""The scan archive: metadata model, BIDS storage, permissions, verification, backup and export."""
