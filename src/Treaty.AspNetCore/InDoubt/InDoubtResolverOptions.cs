using Microsoft.Extensions.Options;

namespace Treaty.AspNetCore.InDoubt;

/// <summary>Settings of the in-doubt resolver (see <see cref="InDoubtServiceCollectionExtensions.AddTreatyInDoubtResolver"/>).</summary>
public sealed class InDoubtResolverOptions
{
    /// <summary>
    /// The coordinator's base address (for example <c>http://treaty:5080/</c>); the resolver asks
    /// <c>GET {Coordinator}api/v1/transactions/{gid}</c>. Required.
    /// </summary>
    public Uri? Coordinator { get; set; }

    /// <summary>
    /// How long a branch may stay prepared (2PC) or voted/pre-committed (3PC) without hearing the
    /// outcome before the resolver asks the coordinator. Longer than the coordinator normally takes
    /// to finish a transaction, so a healthy system never needs the resolver. Default 30 seconds.
    /// </summary>
    public TimeSpan After { get; set; } = InDoubtResolverDefaults.After;

    /// <summary>How often the resolver looks for branches whose check is due. Default 5 seconds.</summary>
    public TimeSpan PollInterval { get; set; } = InDoubtResolverDefaults.PollInterval;

    /// <summary>
    /// How long to wait before asking again when the answer left the branch in doubt (the
    /// coordinator is undecided, or unreachable in 2PC); doubled per check up to
    /// <see cref="MaxRecheckDelay"/>. Default 5 seconds.
    /// </summary>
    public TimeSpan FirstRecheckDelay { get; set; } = InDoubtResolverDefaults.FirstRecheckDelay;

    /// <summary>The longest wait between two checks of one branch. Default 5 minutes.</summary>
    public TimeSpan MaxRecheckDelay { get; set; } = InDoubtResolverDefaults.MaxRecheckDelay;

    /// <summary>
    /// How long one question to the coordinator may take; no answer in time counts as
    /// unreachable. Default 10 seconds.
    /// </summary>
    public TimeSpan RequestTimeout { get; set; } = InDoubtResolverDefaults.RequestTimeout;

    /// <summary>
    /// A client key of the coordinator (its <c>--api-key</c>), sent as <c>Authorization: Bearer</c>;
    /// null sends none (a coordinator without keys). Never logged.
    /// </summary>
    public string? ApiKey { get; set; }

    /// <summary>Most branches looked at in one pass. Default 100.</summary>
    public int BatchSize { get; set; } = InDoubtResolverDefaults.BatchSize;

    /// <summary>The problems of these settings, or an empty list when they are usable.</summary>
    public IReadOnlyList<string> Validate()
    {
        var problems = new List<string>();
        if (Coordinator is null)
        {
            problems.Add("InDoubtResolverOptions.Coordinator is required (the coordinator's base address, e.g. http://treaty:5080/).");
        }
        else if (!Coordinator.IsAbsoluteUri || (Coordinator.Scheme != Uri.UriSchemeHttp && Coordinator.Scheme != Uri.UriSchemeHttps))
        {
            problems.Add("InDoubtResolverOptions.Coordinator must be an absolute http or https address.");
        }

        if (After <= TimeSpan.Zero)
        {
            problems.Add("InDoubtResolverOptions.After must be positive.");
        }

        if (PollInterval <= TimeSpan.Zero)
        {
            problems.Add("InDoubtResolverOptions.PollInterval must be positive.");
        }

        if (FirstRecheckDelay <= TimeSpan.Zero)
        {
            problems.Add("InDoubtResolverOptions.FirstRecheckDelay must be positive.");
        }
        else if (MaxRecheckDelay < FirstRecheckDelay)
        {
            problems.Add("InDoubtResolverOptions.MaxRecheckDelay must not be shorter than FirstRecheckDelay.");
        }

        if (RequestTimeout <= TimeSpan.Zero)
        {
            problems.Add("InDoubtResolverOptions.RequestTimeout must be positive.");
        }

        if (BatchSize < 1)
        {
            problems.Add("InDoubtResolverOptions.BatchSize must be at least 1.");
        }

        return problems;
    }
}

/// <summary>Every default of the in-doubt resolver in one place.</summary>
public static class InDoubtResolverDefaults
{
    /// <summary>Default time in doubt before the first question.</summary>
    public static readonly TimeSpan After = TimeSpan.FromSeconds(30);

    /// <summary>Default interval between passes.</summary>
    public static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(5);

    /// <summary>Default first wait before asking again.</summary>
    public static readonly TimeSpan FirstRecheckDelay = TimeSpan.FromSeconds(5);

    /// <summary>Default longest wait before asking again.</summary>
    public static readonly TimeSpan MaxRecheckDelay = TimeSpan.FromMinutes(5);

    /// <summary>Default timeout of one question to the coordinator.</summary>
    public static readonly TimeSpan RequestTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Default most branches per pass.</summary>
    public const int BatchSize = 100;

    /// <summary>
    /// The name of the <see cref="System.Net.Http.HttpClient"/> the resolver asks the coordinator
    /// with: <c>services.AddHttpClient(InDoubtResolverDefaults.HttpClientName).AddHttpMessageHandler(...)</c>
    /// adds credentials or a proxy.
    /// </summary>
    public const string HttpClientName = "Treaty.InDoubtResolver";
}

/// <summary>Rejects unusable <see cref="InDoubtResolverOptions"/> when the host starts.</summary>
internal sealed class InDoubtResolverOptionsValidator : IValidateOptions<InDoubtResolverOptions>
{
    public ValidateOptionsResult Validate(string? name, InDoubtResolverOptions options)
    {
        var problems = options.Validate();
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}
