"""Model definitions, parallel layers and weight loading."""
