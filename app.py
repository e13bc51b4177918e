"""defect-xai Space: builds the Space package's app and launches it (everything else lives in `space/`).

Public API (gradio_client): /detect(image, category), /explain(image, category, method), /info(),
/fit(images, name) and /train_classifier(category) for a visitor's own part.
"""

from space.server import main

if __name__ == "__main__":
    main()
