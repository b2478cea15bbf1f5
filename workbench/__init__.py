"""The Gradio app: layout and wiring over `core`."""
