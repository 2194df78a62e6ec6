namespace Treaty.Server;

/// <summary>Settings of a coordinator instance. Defaults live in <see cref="TreatyServerDefaults"/>.</summary>
public sealed class TreatyServerOptions
{
    /// <summary>Directory of the embedded SQLite database (<c>treaty.db</c>).</summary>
    public string DataDir { get; set; } = TreatyServerDefaults.DataDir;

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

    /// <summary>Validates the settings; throws with every problem named.</summary>
    public void Validate()
    {
        var problems = new List<string>();
        if (string.IsNullOrWhiteSpace(DataDir))
        {
            problems.Add("DataDir is required.");
        }

        if (string.IsNullOrWhiteSpace(Urls))
        {
            problems.Add("Urls is required.");
        }

        if (MaxRequestBodyBytes is < 1024 or > 64 * 1024 * 1024)
        {
            problems.Add("MaxRequestBodyBytes must be between 1 KiB and 64 MiB.");
        }

        if (RecoveryInterval <= TimeSpan.Zero)
        {
            problems.Add("RecoveryInterval must be positive.");
        }

        if (MaxWait < TimeSpan.Zero)
        {
            problems.Add("MaxWait must not be negative.");
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

        if (problems.Count > 0)
        {
            throw new ArgumentException("Invalid Treaty server options: " + string.Join(" ", problems));
        }
    }
}

/// <summary>Every server default in one place.</summary>
public static class TreatyServerDefaults
{
    public const string DataDir = "./data";
    public const string Urls = "http://127.0.0.1:5080";
    public const long MaxRequestBodyBytes = 1024 * 1024;
    public const int MaxBranchResultBytes = 64 * 1024;
    public const int MaxConnectionsPerParticipant = 256;
    /// <summary>Shortest accepted <see cref="TreatyServerOptions.CallbackSecret"/>.</summary>
    public const int MinCallbackSecretLength = 16;
    public static readonly TimeSpan RecoveryInterval = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxWait = TimeSpan.FromSeconds(60);
}
