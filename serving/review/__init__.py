"""The review page: a radiologist uploads an X-ray and sees the served answer with its Grad-CAM heat map."""
