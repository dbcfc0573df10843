"""Client helpers for ``pochi serve``'s JSON API v1 (the original pochitrain's
``pochitrain.api``): ``serializers`` builds request bodies from OpenCV-style BGR arrays."""
