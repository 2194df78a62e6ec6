using System.CommandLine;
using Treaty.Core.Engine;
using Treaty.Server;

namespace Treaty.Cli;

/// <summary><c>treaty serve</c>: runs a coordinator.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var urls = new Option<string>("--urls") { Description = "Where to listen", DefaultValueFactory = _ => TreatyServerDefaults.Urls };
        var dataDir = new Option<string>("--data-dir") { Description = "Directory of the SQLite database", DefaultValueFactory = _ => TreatyServerDefaults.DataDir };
        var callbackSecret = new Option<string?>("--callback-secret")
        {
            Description = $"Sign every branch call (Treaty-Signature) with this secret, at least {TreatyServerDefaults.MinCallbackSecretLength} characters; " +
                $"{CallbackSecretVariable} does the same without showing the secret in the process list",
        };
        var alertWebhook = new Option<string?>("--alert-webhook")
        {
            Description = "POST an alert (JSON) here when a transaction becomes stuck and when it stops being stuck; retried until answered 2xx",
        };
        var alertSecret = new Option<string?>("--alert-secret")
        {
            Description = $"Sign alerts (Treaty-Signature) with this secret, at least {TreatyServerDefaults.MinCallbackSecretLength} characters; " +
                $"{AlertSecretVariable} does the same without showing the secret in the process list",
        };
        var otlpEndpoint = new Option<string?>("--otlp-endpoint")
        {
            Description = $"Export traces, metrics and logs over OTLP to this collector (e.g. http://127.0.0.1:4318); {OtlpEndpointVariable} is read when not given",
        };
        var otlpProtocol = new Option<string?>("--otlp-protocol")
        {
            Description = $"OTLP transport: http (protobuf, the default) or grpc; {OtlpProtocolVariable} is read when not given",
        };
        otlpProtocol.AcceptOnlyFromAmong(TreatyServerDefaults.OtlpProtocol, TreatyServerDefaults.OtlpProtocolGrpc);
        var timelineBodyBytes = new Option<int>("--timeline-body-bytes")
        {
            Description = $"Keep this much (UTF-8 bytes, 0 to {TreatyServerDefaults.MaxTimelineBodyBytes}) of every participant answer for the dashboard's timeline",
            DefaultValueFactory = _ => TreatyServerDefaults.TimelineBodyBytes,
        };
        var retention = new Option<string?>("--retention")
        {
            Description = "Delete finished transactions (and their journal) this long after they finished, e.g. 7d, 12h, 30m; default: keep everything",
        };
        var retentionInterval = new Option<string?>("--retention-interval")
        {
            Description = $"How often retention runs (default {TreatyServerDefaults.RetentionInterval.TotalMinutes:0}m)",
        };
        var store = new Option<string?>("--store")
        {
            Description = "Where transactions are kept: sqlite (default, one file under --data-dir) or postgres (--connection-string; several coordinators may share it)",
        };
        var connectionString = new Option<string?>("--connection-string")
        {
            Description = $"The PostgreSQL connection string with --store postgres (or env {ConnectionStringVariable}, which keeps a password out of the process list)",
        };
        var instanceId = new Option<string?>("--instance-id")
        {
            Description = "This coordinator's name among those sharing a database (the owner of its leases); default: a new name per process",
        };
        var lease = new Option<string?>("--lease")
        {
            Description = $"How long this instance's lease on a transaction lasts without renewal, 1s to 1h (default {LeaseDefaults.Duration.TotalSeconds:0}s)",
        };
        var command = new Command("serve", "Run the coordinator (HTTP API, engine, recovery) on the embedded SQLite store or on PostgreSQL")
        {
            urls, dataDir, callbackSecret, alertWebhook, alertSecret, otlpEndpoint, otlpProtocol,
        };
        command.Options.Add(timelineBodyBytes);
        command.Options.Add(retention);
        command.Options.Add(retentionInterval);
        command.Options.Add(store);
        command.Options.Add(connectionString);
        command.Options.Add(instanceId);
        command.Options.Add(lease);
        var security = new ServeSecurityFlags();
        foreach (var option in security.All)
        {
            command.Options.Add(option);
        }

        command.SetAction(async (parse, cancellationToken) =>
        {
            var options = new TreatyServerOptions
            {
                Urls = parse.GetValue(urls)!,
                DataDir = UserPath.Resolve(parse.GetValue(dataDir)!),
                CallbackSecret = ResolveCallbackSecret(parse.GetValue(callbackSecret), Environment.GetEnvironmentVariable(CallbackSecretVariable)),
                AlertWebhook = parse.GetValue(alertWebhook),
                AlertSecret = ResolveCallbackSecret(parse.GetValue(alertSecret), Environment.GetEnvironmentVariable(AlertSecretVariable)),
                OtlpEndpoint = ResolveCallbackSecret(parse.GetValue(otlpEndpoint), Environment.GetEnvironmentVariable(OtlpEndpointVariable)),
                OtlpProtocol = ResolveOtlpProtocol(parse.GetValue(otlpProtocol), Environment.GetEnvironmentVariable(OtlpProtocolVariable)),
                TimelineBodyBytes = parse.GetValue(timelineBodyBytes),
            };
            security.Apply(parse, options);
            if (!TryApplyRetention(parse.GetValue(retention), parse.GetValue(retentionInterval), options, out var problem))
            {
                await Console.Error.WriteLineAsync(problem);
                return 2;
            }

            if (!TryApplyStore(
                    parse.GetValue(store),
                    parse.GetValue(connectionString),
                    Environment.GetEnvironmentVariable(ConnectionStringVariable),
                    parse.GetValue(instanceId),
                    parse.GetValue(lease),
                    options,
                    out problem))
            {
                await Console.Error.WriteLineAsync(problem);
                return 2;
            }

            try
            {
                options.Validate();
            }
            catch (ArgumentException ex)
            {
                await Console.Error.WriteLineAsync(ex.Message);
                return 2;
            }

            if (options.Store == TreatyServerDefaults.PostgresStore)
            {
                // Host, port and database only: the connection string may hold a password.
                await Console.Out.WriteLineAsync(
                    $"treaty: store postgres on {options.DescribeConnection()}, instance {options.InstanceId ?? "(generated)"}, lease {options.LeaseDuration.TotalSeconds:0.###}s");
            }

            await using var app = TreatyServer.CreateApp(options);
            await app.RunAsync(cancellationToken);
            return 0;
        });
        return command;
    }

    /// <summary>Reads <c>--retention</c> and <c>--retention-interval</c> into <paramref name="options"/>.</summary>
    internal static bool TryApplyRetention(string? retention, string? interval, TreatyServerOptions options, out string problem)
    {
        problem = "";
        if (retention is not null)
        {
            if (!DurationText.TryParse(retention, out var age))
            {
                problem = $"--retention '{retention}' is not a duration such as 7d, 12h, 30m or 45s.";
                return false;
            }

            options.Retention = age;
        }

        if (interval is not null)
        {
            if (!DurationText.TryParse(interval, out var every))
            {
                problem = $"--retention-interval '{interval}' is not a duration such as 1m, 30s or 500ms.";
                return false;
            }

            options.RetentionInterval = every;
        }

        return true;
    }

    /// <summary>
    /// Reads <c>--store</c>, <c>--connection-string</c>, <c>--instance-id</c> and <c>--lease</c> into
    /// <paramref name="options"/>; the problem names the flag and never repeats the connection string.
    /// </summary>
    internal static bool TryApplyStore(string? store, string? connectionStringFlag, string? connectionStringVariable, string? instanceId, string? lease, TreatyServerOptions options, out string problem)
    {
        problem = "";
        var connectionString = ResolveCallbackSecret(connectionStringFlag, connectionStringVariable);
        if (store is not null)
        {
            if (store is not (TreatyServerDefaults.SqliteStore or TreatyServerDefaults.PostgresStore))
            {
                problem = $"--store '{store}' must be {TreatyServerDefaults.SqliteStore} or {TreatyServerDefaults.PostgresStore}.";
                return false;
            }

            options.Store = store;
        }

        if (options.Store == TreatyServerDefaults.PostgresStore)
        {
            if (string.IsNullOrWhiteSpace(connectionString))
            {
                problem = $"--store postgres needs --connection-string (or env {ConnectionStringVariable}).";
                return false;
            }

            options.ConnectionString = connectionString;
            if (options.DescribeConnection() == "(no valid connection string)")
            {
                problem = "--connection-string is not a valid PostgreSQL connection string (Npgsql syntax: Host=...;Port=...;Database=...;Username=...).";
                return false;
            }
        }
        else if (!string.IsNullOrEmpty(connectionStringFlag))
        {
            // Most likely a forgotten --store postgres; the variable alone is left alone (it may be set for other runs).
            problem = "--connection-string is only for --store postgres.";
            return false;
        }

        if (instanceId is not null)
        {
            if (string.IsNullOrWhiteSpace(instanceId) || instanceId.Length > LeaseRequest.MaxOwnerLength)
            {
                problem = $"--instance-id must be non-blank and at most {LeaseRequest.MaxOwnerLength} characters.";
                return false;
            }

            options.InstanceId = instanceId;
        }

        if (lease is not null)
        {
            if (!DurationText.TryParse(lease, out var duration) || duration < TimeSpan.FromSeconds(1) || duration > TimeSpan.FromHours(1))
            {
                problem = $"--lease '{lease}' is not a duration between 1s and 1h, such as 15s or 1m.";
                return false;
            }

            options.LeaseDuration = duration;
        }

        return true;
    }

    /// <summary>The environment variable read when <c>--connection-string</c> is not given.</summary>
    internal const string ConnectionStringVariable = "TREATY_CONNECTION_STRING";

    /// <summary>The environment variable read when <c>--callback-secret</c> is not given.</summary>
    internal const string CallbackSecretVariable = "TREATY_CALLBACK_SECRET";

    /// <summary>The environment variable read when <c>--alert-secret</c> is not given.</summary>
    internal const string AlertSecretVariable = "TREATY_ALERT_SECRET";

    /// <summary>The standard OpenTelemetry variable read when <c>--otlp-endpoint</c> is not given.</summary>
    internal const string OtlpEndpointVariable = "OTEL_EXPORTER_OTLP_ENDPOINT";

    /// <summary>The standard OpenTelemetry variable read when <c>--otlp-protocol</c> is not given.</summary>
    internal const string OtlpProtocolVariable = "OTEL_EXPORTER_OTLP_PROTOCOL";

    /// <summary>The flag wins; the variable's <c>http/protobuf</c> (its default) is <c>http</c>; anything
    /// else is passed on for validation to name.</summary>
    internal static string ResolveOtlpProtocol(string? flag, string? environment) =>
        !string.IsNullOrEmpty(flag) ? flag
        : string.IsNullOrEmpty(environment) || environment == "http/protobuf" ? TreatyServerDefaults.OtlpProtocol
        : environment;

    /// <summary>The flag wins over the environment; an empty value means "no secret".</summary>
    internal static string? ResolveCallbackSecret(string? flag, string? environment) =>
        !string.IsNullOrEmpty(flag) ? flag : string.IsNullOrEmpty(environment) ? null : environment;
}
