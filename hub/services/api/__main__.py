"""``python -m hub.services.api``: how the hub starts the INCloud API service."""
from hub.services.api.app import main

main()
