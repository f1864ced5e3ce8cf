"""The seven FER2013 expressions, in label order 0..6."""

EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
