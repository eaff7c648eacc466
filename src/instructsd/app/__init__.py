"""The web demo: a thin Gradio front end over :func:`instructsd.edit.editor.edit_images`."""
