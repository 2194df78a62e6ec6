using Treaty.Core.Engine;

namespace Treaty.Server;

/// <summary>Settings of a coordinator instance. Defaults live in <see cref="TreatyServerDefaults"/>.</summary>
public sealed class TreatyServerOptions
{
    /// <summary>Directory of the embedded SQLite database (<c>treaty.db</c>); unused with PostgreSQL.</summary>
    public string DataDir { get; set; } = TreatyServerDefaults.DataDir;

    /// <summary>
    /// Where transactions are kept: <c>sqlite</c> (the default: one file under <see cref="DataDir"/>,
    /// one coordinator process) or <c>postgres</c> (<see cref="ConnectionString"/>; several
    /// coordinator instances may share the database, see <see cref="InstanceId"/>).
    /// </summary>
    public string Store { get; set; } = TreatyServerDefaults.Store;

    /// <summary>The PostgreSQL connection string (Npgsql syntax), required with <c>Store = postgres</c>.
    /// Never logged: the coordinator names only its host, port and database.</summary>
    public string? ConnectionString { get; set; }

    /// <summary>Where Kestrel listens, e.g. <c>http://127.0.0.1:5080</c>; port 0 picks a free port.</summary>
    public string Urls { get; set; } = TreatyServerDefaults.Urls;

    /// <summary>Largest accepted request body.</summary>
    public long MaxRequestBodyBytes { get; set; } = TreatyServerDefaults.MaxRequestBodyBytes;

    /// <summary>How often the recovery service looks for due work that no runner holds.</summary>
    public TimeSpan RecoveryInterval { get; set; } = TreatyServerDefaults.RecoveryInterval;

    /// <summary>Longest <c>?wait=</c> a client may ask for.</summary>
    public TimeSpan MaxWait { get; set; } = TreatyServerDefaults.MaxWait;

    /// <summary>Largest participant answer stored as a branch result.</summary>
    public int MaxBranchResultBytes { get; set; } = TreatyServerDefaults.MaxBranchResultBytes;

    /// <summary>How much of each participant answer the timeline keeps (UTF-8 bytes, 0 keeps none,
    /// at most <see cref="TreatyServerDefaults.MaxTimelineBodyBytes"/>); the dashboard shows it.</summary>
    public int TimelineBodyBytes { get; set; } = TreatyServerDefaults.TimelineBodyBytes;

    /// <summary>How long a choreographed saga may go without a reported event before it is stuck,
    /// when its last event named no <c>timeoutMs</c>.</summary>
    public TimeSpan ChoreographyTimeout { get; set; } = TimeSpan.FromMilliseconds(Core.Model.TreatyDefaults.ChoreographyTimeoutMs);

    /// <summary>Connections per participant host kept by the branch invoker.</summary>
    public int MaxConnectionsPerParticipant { get; set; } = TreatyServerDefaults.MaxConnectionsPerParticipant;

    /// <summary>
    /// Shared secret for signing branch calls (<c>Treaty-Signature</c>, HMAC-SHA256 over the UTF-8
    /// bytes of this string); null signs nothing. At least
    /// <see cref="TreatyServerDefaults.MinCallbackSecretLength"/> characters when set. Never logged.
    /// </summary>
    /// <remarks>
    /// Rotation: let every participant accept the old and the new secret, switch this to the new
    /// one, then drop the old one from the participants.
    /// </remarks>
    public string? CallbackSecret { get; set; }

    /// <summary>
    /// Where alerts go: a POST of JSON (<c>stuck</c>, then <c>resolved</c>) for every transaction that
    /// waits for an operator, retried until the webhook answers 2xx. Null sends none.
    /// </summary>
    public string? AlertWebhook { get; set; }

    /// <summary>Signs alerts (<c>Treaty-Signature</c>, as branch calls are signed) with this secret, at
    /// least <see cref="TreatyServerDefaults.MinCallbackSecretLength"/> characters; null sends them
    /// unsigned. Separate from <see cref="CallbackSecret"/>: whoever receives alerts must not be able
    /// to forge branch calls. Never logged.</summary>
    public string? AlertSecret { get; set; }

    /// <summary>How often the alert monitor compares its outbox with the store's stuck transactions.</summary>
    public TimeSpan AlertReconcileInterval { get; set; } = TreatyServerDefaults.AlertReconcileInterval;

    /// <summary>First delay before an undelivered alert is sent again; doubles up to <see cref="AlertRetryMaxDelay"/>.</summary>
    public TimeSpan AlertRetryInitialDelay { get; set; } = TreatyServerDefaults.AlertRetryInitialDelay;

    /// <summary>Longest delay between two tries of an undelivered alert.</summary>
    public TimeSpan AlertRetryMaxDelay { get; set; } = TreatyServerDefaults.AlertRetryMaxDelay;

    /// <summary>Where traces, metrics and logs go over OTLP, e.g. <c>http://127.0.0.1:4318</c> (HTTP: the
    /// <c>/v1/traces</c>, <c>/v1/metrics</c> and <c>/v1/logs</c> paths are appended) or
    /// <c>http://127.0.0.1:4317</c> (gRPC); null exports nothing.</summary>
    public string? OtlpEndpoint { get; set; }

    /// <summary>OTLP transport: <c>http</c> (protobuf over HTTP, the default) or <c>grpc</c>.</summary>
    public string OtlpProtocol { get; set; } = TreatyServerDefaults.OtlpProtocol;

    /// <summary>How often metrics are exported, and the longest a finished span or a log waits for its batch.</summary>
    public TimeSpan OtlpExportInterval { get; set; } = TreatyServerDefaults.OtlpExportInterval;
    /// <summary>Client keys (submit and read), each <c>NAME:SECRET</c> or a bare secret; several for rotation.
    /// None here and in <see cref="OperatorKeys"/>: no authentication, loopback only. Never logged.</summary>
    public IList<string> ApiKeys { get; } = new List<string>();

    /// <summary>Operator keys: everything a client key may do, plus retry, abort and the dashboard.</summary>
    public IList<string> OperatorKeys { get; } = new List<string>();

    /// <summary>URL prefixes the coordinator may call as participants; empty: loopback only.</summary>
    public IList<string> AllowedParticipants { get; } = new List<string>();

    /// <summary>
    /// Services whose dead letters the dashboard shows, each <c>NAME=URL</c> (the service's base URL;
    /// it maps <c>MapTreatyDeadLetters()</c>). Every URL must pass <see cref="AllowedParticipants"/>,
    /// and <see cref="CallbackSecret"/> is required: the coordinator signs its requests with it.
    /// </summary>
    public IList<string> DeadLetterSources { get; } = new List<string>();

    /// <summary>How long the coordinator waits for one dead-letter source before it reports it unreachable.</summary>
    public TimeSpan DeadLetterSourceTimeout { get; set; } = TreatyServerDefaults.DeadLetterSourceTimeout;

    /// <summary>
    /// How long a finished (committed or aborted) transaction is kept after it finished; older ones
    /// are deleted with their journal. Null (the default) keeps everything. A deleted gid is unknown
    /// afterwards (GET answers 404) and may be submitted again as a new transaction, so keep it
    /// longer than any client may retry a submit.
    /// </summary>
    public TimeSpan? Retention { get; set; }

    /// <summary>How often retention looks for transactions to delete.</summary>
    public TimeSpan RetentionInterval { get; set; } = TreatyServerDefaults.RetentionInterval;

    /// <summary>Most transactions deleted in one write; small, so one batch never holds the store's writer for long.</summary>
    public int RetentionBatchSize { get; set; } = TreatyServerDefaults.RetentionBatchSize;

    /// <summary>Pause between two batches of one pass, which leaves the writer to the hot path.</summary>
    public TimeSpan RetentionPause { get; set; } = TreatyServerDefaults.RetentionPause;

    /// <summary>Requests per second per key (or per remote address without one); 0: no limit.</summary>
    public int RateLimitPerSecond { get; set; }

    /// <summary>
    /// This instance's name among the coordinators sharing a store (the owner of its leases).
    /// Null: a new name per process (host, process id and a random suffix). A stable name lets a
    /// restarted instance take its own transactions back at once instead of after their leases expire.
    /// </summary>
    public string? InstanceId { get; set; }

    /// <summary>How long this instance's lease on a transaction lasts without renewal (renewed every
    /// third of it): how long a dead instance's transactions wait before another takes them over.</summary>
    public TimeSpan LeaseDuration { get; set; } = LeaseDefaults.Duration;

    /// <summary>Host, port and database of <see cref="ConnectionString"/>, for logs and messages (never the password).</summary>
    public string DescribeConnection()
    {
        if (ConnectionString is null || !IsConnectionString(ConnectionString))
        {
            return "(no valid connection string)";
        }

        var builder = new Npgsql.NpgsqlConnectionStringBuilder(ConnectionString);
        return $"{builder.Host}:{builder.Port}/{builder.Database}";
    }

    private static bool IsConnectionString(string text)
    {
        try
        {
            _ = new Npgsql.NpgsqlConnectionStringBuilder(text);
            return true;
        }
        catch (ArgumentException)
        {
            return false;
        }
        catch (FormatException)
        {
            return false;
        }
    }

    /// <summary>Validates the settings; throws with every problem named.</summary>
    public void Validate()
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(DataDir))
        {
            problems.Add("DataDir is required.");
        }

        if (Store == TreatyServerDefaults.PostgresStore)
        {
            if (string.IsNullOrWhiteSpace(ConnectionString))
            {
                problems.Add("ConnectionString is required with Store = postgres.");
            }
            else if (!IsConnectionString(ConnectionString))
            {
                // The text is not repeated: it may hold a password.
                problems.Add("ConnectionString is not a valid PostgreSQL connection string (Npgsql syntax: Host=...;Port=...;Database=...;Username=...).");
            }
        }
        else if (Store != TreatyServerDefaults.SqliteStore)
        {
            problems.Add($"Store must be {TreatyServerDefaults.SqliteStore} or {TreatyServerDefaults.PostgresStore}.");
        }

        if (string.IsNullOrWhiteSpace(Urls))
        {
            problems.Add("Urls is required.");
        }

        if (ChoreographyTimeout <= TimeSpan.Zero || ChoreographyTimeout.TotalMilliseconds > Core.Model.TreatyDefaults.MaxTimeoutMs)
        {
            problems.Add("ChoreographyTimeout must be positive and at most 30 days.");
        }

        if (MaxRequestBodyBytes is < 1024 or > 64 * 1024 * 1024)
        {
            problems.Add("MaxRequestBodyBytes must be between 1 KiB and 64 MiB.");
        }

        if (RecoveryInterval <= TimeSpan.Zero)
        {
            problems.Add("RecoveryInterval must be positive.");
        }

        if (LeaseDuration < TimeSpan.FromSeconds(1) || LeaseDuration > TimeSpan.FromHours(1))
        {
            problems.Add("LeaseDuration must be between 1 second and 1 hour.");
        }

        if (InstanceId is { } instance && (string.IsNullOrWhiteSpace(instance) || instance.Length > LeaseRequest.MaxOwnerLength))
        {
            problems.Add($"InstanceId must be non-blank and at most {LeaseRequest.MaxOwnerLength} characters.");
        }

        if (Retention is { } retention && retention <= TimeSpan.Zero)
        {
            problems.Add("Retention must be positive when set.");
        }

        if (RetentionInterval <= TimeSpan.Zero || RetentionPause < TimeSpan.Zero || RetentionBatchSize is < 1 or > 100_000)
        {
            problems.Add("RetentionInterval must be positive, RetentionPause not negative, and RetentionBatchSize between 1 and 100000.");
        }

        if (MaxWait < TimeSpan.Zero)
        {
            problems.Add("MaxWait must not be negative.");
        }

        if (TimelineBodyBytes is < 0 or > TreatyServerDefaults.MaxTimelineBodyBytes)
        {
            problems.Add($"TimelineBodyBytes must be between 0 and {TreatyServerDefaults.MaxTimelineBodyBytes}.");
        }

        if (MaxConnectionsPerParticipant < 1)
        {
            problems.Add("MaxConnectionsPerParticipant must be at least 1.");
        }

        // The message names the rule, never the value: the secret must not reach a log.
        if (CallbackSecret is not null && (CallbackSecret.Length < TreatyServerDefaults.MinCallbackSecretLength || string.IsNullOrWhiteSpace(CallbackSecret)))
        {
            problems.Add($"CallbackSecret must be at least {TreatyServerDefaults.MinCallbackSecretLength} characters when set.");
        }

        if (AlertWebhook is not null
            && !(Uri.TryCreate(AlertWebhook, UriKind.Absolute, out var webhook) && (webhook.Scheme == Uri.UriSchemeHttp || webhook.Scheme == Uri.UriSchemeHttps)))
        {
            problems.Add("AlertWebhook must be an absolute http or https URL.");
        }

        if (AlertSecret is not null && (AlertSecret.Length < TreatyServerDefaults.MinCallbackSecretLength || string.IsNullOrWhiteSpace(AlertSecret)))
        {
            problems.Add($"AlertSecret must be at least {TreatyServerDefaults.MinCallbackSecretLength} characters when set.");
        }

        if (AlertReconcileInterval <= TimeSpan.Zero || AlertRetryInitialDelay <= TimeSpan.Zero || AlertRetryMaxDelay < AlertRetryInitialDelay)
        {
            problems.Add("AlertReconcileInterval and AlertRetryInitialDelay must be positive, and AlertRetryMaxDelay at least AlertRetryInitialDelay.");
        }

        if (OtlpEndpoint is not null
            && !(Uri.TryCreate(OtlpEndpoint, UriKind.Absolute, out var otlp) && (otlp.Scheme == Uri.UriSchemeHttp || otlp.Scheme == Uri.UriSchemeHttps)))
        {
            problems.Add("OtlpEndpoint must be an absolute http or https URL.");
        }

        if (OtlpProtocol is not (TreatyServerDefaults.OtlpProtocol or TreatyServerDefaults.OtlpProtocolGrpc))
        {
            problems.Add("OtlpProtocol must be http or grpc.");
        }

        if (OtlpExportInterval < TimeSpan.FromMilliseconds(10) || OtlpExportInterval > TimeSpan.FromHours(1))
        {
            problems.Add("OtlpExportInterval must be between 10 ms and 1 h.");
        }

        Security.SecuritySettings.Validate(this, problems);
        _ = DeadLetters.DeadLetterSource.Parse(this, problems);
        if (problems.Count > 0)
        {
            throw new ArgumentException("Invalid Treaty server options: " + string.Join(" ", problems));
        }
    }
}

/// <summary>Every server default in one place.</summary>
public static class TreatyServerDefaults
{
    /// <summary>The embedded store's name in <see cref="TreatyServerOptions.Store"/> (the default).</summary>
    public const string SqliteStore = "sqlite";
    /// <summary>The PostgreSQL store's name in <see cref="TreatyServerOptions.Store"/>.</summary>
    public const string PostgresStore = "postgres";
    public const string Store = SqliteStore;
    public const string DataDir = "./data";
    public const string Urls = "http://127.0.0.1:5080";
    public const long MaxRequestBodyBytes = 1024 * 1024;
    public const int MaxBranchResultBytes = 16 * 1024;
    public const int MaxConnectionsPerParticipant = 256;
    public const int TimelineBodyBytes = 2048;
    /// <summary>Largest accepted <see cref="TreatyServerOptions.TimelineBodyBytes"/>.</summary>
    public const int MaxTimelineBodyBytes = 64 * 1024;
    /// <summary>Shortest accepted <see cref="TreatyServerOptions.CallbackSecret"/>.</summary>
    public const int MinCallbackSecretLength = 16;
    public static readonly TimeSpan RecoveryInterval = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxWait = TimeSpan.FromSeconds(60);
    public static readonly TimeSpan AlertReconcileInterval = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan AlertRetryInitialDelay = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan AlertRetryMaxDelay = TimeSpan.FromMinutes(1);
    /// <summary>OTLP over HTTP (protobuf).</summary>
    public const string OtlpProtocol = "http";
    /// <summary>OTLP over gRPC.</summary>
    public const string OtlpProtocolGrpc = "grpc";
    public static readonly TimeSpan OtlpExportInterval = TimeSpan.FromSeconds(10);
    public static readonly TimeSpan DeadLetterSourceTimeout = TimeSpan.FromSeconds(5);
    public static readonly TimeSpan RetentionInterval = TimeSpan.FromMinutes(1);
    public const int RetentionBatchSize = 500;
    public static readonly TimeSpan RetentionPause = TimeSpan.FromMilliseconds(50);
}
