using OpenTelemetry;
using OpenTelemetry.Exporter;
using OpenTelemetry.Logs;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Treaty.Server;

/// <summary>
/// Sends the coordinator's traces (ActivitySource <c>Treaty</c>), metrics (Meter <c>Treaty</c>,
/// the store's included) and logs (with their <c>gid</c> scope) to an OTLP collector, when
/// <see cref="TreatyServerOptions.OtlpEndpoint"/> is set. Without it nothing is registered: the
/// sources cost nothing until something listens.
/// </summary>
internal static class OtlpExport
{
    /// <summary>Service name when <c>OTEL_SERVICE_NAME</c> does not give one.</summary>
    public const string DefaultServiceName = "treaty";

    /// <param name="services">The coordinator's services.</param>
    /// <param name="options">Its options: the endpoint, protocol and interval.</param>
    /// <param name="instance">This coordinator's lease owner name, exported as the resource's
    /// <c>service.instance.id</c>: with several instances on one database, the telemetry of each
    /// carries the name its transactions are leased to (the store's <c>owner</c> column, the logs).</param>
    public static void AddTreatyOtlpExport(this IServiceCollection services, TreatyServerOptions options, string instance)
    {
        if (options.OtlpEndpoint is not { } endpoint)
        {
            return;
        }

        var grpc = options.OtlpProtocol == TreatyServerDefaults.OtlpProtocolGrpc;
        var interval = (int)options.OtlpExportInterval.TotalMilliseconds;
        // An endpoint set in code is used as given: over HTTP each signal needs its own path (the
        // SDK appends it only to an endpoint read from OTEL_EXPORTER_OTLP_ENDPOINT).
        void Configure(OtlpExporterOptions exporter, string signal)
        {
            exporter.Protocol = grpc ? OtlpExportProtocol.Grpc : OtlpExportProtocol.HttpProtobuf;
            exporter.Endpoint = grpc ? new Uri(endpoint) : new Uri(endpoint.TrimEnd('/') + "/v1/" + signal);
        }

        services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService(
                Environment.GetEnvironmentVariable("OTEL_SERVICE_NAME") is { Length: > 0 } name ? name : DefaultServiceName,
                serviceInstanceId: instance))
            .WithTracing(tracing => tracing
                .AddSource(TreatyTelemetry.Name)
                .AddOtlpExporter(exporter =>
                {
                    Configure(exporter, "traces");
                    exporter.BatchExportProcessorOptions.ScheduledDelayMilliseconds = interval;
                }))
            .WithMetrics(metrics => metrics
                .AddMeter(TreatyTelemetry.Name)
                .AddOtlpExporter((exporter, reader) =>
                {
                    Configure(exporter, "metrics");
                    reader.PeriodicExportingMetricReaderOptions.ExportIntervalMilliseconds = interval;
                }))
            .WithLogging(
                logging => logging.AddOtlpExporter((exporter, processor) =>
                {
                    Configure(exporter, "logs");
                    processor.BatchExportProcessorOptions.ScheduledDelayMilliseconds = interval;
                }),
                logger =>
                {
                    logger.IncludeScopes = true; // the gid of every transaction log
                    logger.IncludeFormattedMessage = true;
                });
    }
}
