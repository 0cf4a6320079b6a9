# Multi-stage build: a static, CGO-free binary (the SQLite driver is pure Go) on a distroless
# base that runs as an unprivileged user.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/mandate ./cmd/mandate

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mandate /usr/local/bin/mandate
# The SQLite default writes mandate.db (and its secret file) in the working directory.
WORKDIR /var/lib/mandate
USER nonroot:nonroot
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/mandate"]
CMD ["serve"]
