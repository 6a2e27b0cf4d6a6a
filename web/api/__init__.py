"""The REST API under /api/v1: everything the pages do, as JSON, described by OpenAPI.

One module per noun, each with its own blueprint (`web.api.common.ApiBlueprint`), which
the app factory registers; the OpenAPI document is built from the registered ones.
"""
