"""The model zoo: ``zoo.yaml`` lists the models we publish, ``publish.py`` exports and uploads
them (``python -m hub.publish``, dry run by default; see docs/hub.md)."""
