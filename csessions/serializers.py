from django.core import signing

from csessions import _core


class JSONSerializer(signing.JSONSerializer):
    """Django's JSONSerializer (same bytes in, same objects out) with the work done in C."""

    def dumps(self, obj):
        return _core.json_dumps(obj)

    def loads(self, data):
        return _core.json_loads(data)
