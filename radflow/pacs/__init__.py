"""radflow and a PACS: DICOMweb connections, the result objects (SR, Secondary Capture) and the router.

- `connection`: the DICOMweb root, credentials from a file or a mounted Kubernetes Secret, TLS, retries;
  shared by ingest's DICOMweb source, `radflow route` and the review page.
- `results`: the Structured Report and the Grad-CAM Secondary Capture, created with highdicom, with
  UIDs derived from the source instance so that storing one twice stores nothing new.
- `ledger`: the router's persistent record of every selected instance (SQLite, one transaction per change).
- `router`: `radflow route`, which answers new images of the PACS through a TF Serving endpoint.
"""
