"""The Space: what only the app needs (admission, categories made at run time, uploads, outputs, page, handlers)
over the `xai` library and the `training` package."""
