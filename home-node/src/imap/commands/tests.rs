// tests of the command layer
