# Joins standard input and output to a TCP connection to HOST PORT: a `Tunnel`
# command for mbsync, so that mbsync can be told the server's name (which it
# checks the certificate against) while connecting to an IP literal, with
# nothing resolved through the system resolver. TLS stays end to end between
# mbsync and the server. Usage: tcp_pipe.py HOST PORT
import os
import socket
import sys
import threading

sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))


def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


threading.Thread(target=upstream, daemon=True).start()
while True:
    data = sock.recv(65536)
    if not data:
        break
    os.write(1, data)
