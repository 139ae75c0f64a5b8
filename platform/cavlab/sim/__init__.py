"""The simulation: network build and SUMO inputs (`network`), SUMO backends (`backends`), the one
step loop (`engine`), metrics and trajectories (`metrics`, `recorder`), perception in the loop
(`perception_loop`), and scenarios resolved for a run (`resolve`)."""
