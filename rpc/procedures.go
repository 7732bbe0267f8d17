package rpc

// Procedures of the services every Palisade server mounts itself. They pass
// the same chain as any other procedure, so a policy must admit them.
const (
	HealthCheckProcedure       = "/grpc.health.v1.Health/Check"
	HealthWatchProcedure       = "/grpc.health.v1.Health/Watch"
	ReflectionV1Procedure      = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	ReflectionV1AlphaProcedure = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
)
