"""The ZTB broker. Imports nothing, so `import broker.protocol` stays light."""
