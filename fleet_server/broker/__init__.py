"""MQTT brokers for the fleet: Mosquitto configuration and the embedded amqtt broker."""
