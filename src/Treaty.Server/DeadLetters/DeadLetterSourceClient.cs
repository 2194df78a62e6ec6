using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Treaty.Core.Security;
using Treaty.Server.Security;

namespace Treaty.Server.DeadLetters;

/// <summary>What one source answered to the list request: its letters, or why there are none.</summary>
internal sealed record SourceListing(DeadLetterSource Source, IReadOnlyList<ServiceDeadLetter>? Letters, string? Error);

/// <summary>How a replay request ended.</summary>
internal enum ReplayOutcome
{
    /// <summary>The service put the letter back.</summary>
    Replaying,

    /// <summary>The service has no such letter.</summary>
    NotFound,

    /// <summary>The letter is not dead (already put back or replayed).</summary>
    Conflict,

    /// <summary>The service did not answer, or refused the coordinator.</summary>
    Unavailable,
}

/// <summary>
/// Reads and replays the dead letters of the configured services (<c>MapTreatyDeadLetters</c> in
/// Treaty.Messaging). Every request is signed with the callback secret over
/// <c>"{METHOD} {path}\n" + body</c>, goes only to allowlisted addresses (the branch invoker's
/// connect check), follows no redirect, and waits at most <see cref="TreatyServerOptions.DeadLetterSourceTimeout"/>.
/// </summary>
internal sealed partial class DeadLetterSourceClient : IDisposable
{
    private const int MaxListBytes = 16 * 1024 * 1024;
    private readonly HttpClient _http;
    private readonly byte[] _secret;
    private readonly TimeProvider _time;
    private readonly TimeSpan _timeout;
    private readonly ParticipantAllowlist _allowlist;
    private readonly ILogger _logger;

    public DeadLetterSourceClient(TreatyServerOptions options, ParticipantAllowlist allowlist, TimeProvider time, ILogger<DeadLetterSourceClient> logger)
    {
        Sources = DeadLetterSource.Parse(options, null);
        _secret = Encoding.UTF8.GetBytes(options.CallbackSecret ?? "");
        _time = time;
        _timeout = options.DeadLetterSourceTimeout;
        _allowlist = allowlist;
        _logger = logger;
        var handler = new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            UseCookies = false,
            UseProxy = false,
            ConnectTimeout = options.DeadLetterSourceTimeout,
            ConnectCallback = allowlist.ConnectAsync,
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1),
        };
        _http = new HttpClient(handler) { Timeout = Timeout.InfiniteTimeSpan, MaxResponseContentBufferSize = MaxListBytes };
    }

    /// <summary>The configured sources, in configuration order.</summary>
    public IReadOnlyList<DeadLetterSource> Sources { get; }

    public DeadLetterSource? Find(string name) => Sources.FirstOrDefault(s => string.Equals(s.Name, name, StringComparison.OrdinalIgnoreCase));

    /// <summary>Every source's list, asked at once; a source that fails is reported, never thrown.</summary>
    public Task<SourceListing[]> ListAllAsync(CancellationToken cancellationToken) =>
        Task.WhenAll(Sources.Select(s => ListAsync(s, cancellationToken)));

    private async Task<SourceListing> ListAsync(DeadLetterSource source, CancellationToken cancellationToken)
    {
        try
        {
            using var response = await SendAsync(HttpMethod.Get, source.ListUrl, [], cancellationToken);
            if (response.StatusCode != HttpStatusCode.OK)
            {
                return Failed(source, $"answered {(int)response.StatusCode}{await DetailAsync(response, cancellationToken)}");
            }

            var list = await response.Content.ReadFromJsonAsync(DeadLetterJsonContext.Default.ServiceDeadLetterList, cancellationToken);
            // What a source answers is not trusted to be whole: a list with a letter missing its
            // fields is reported as the source's error rather than shown half (or failing the view).
            return list?.DeadLetters is { } letters && letters.All(IsWhole)
                ? new SourceListing(source, letters, null)
                : Failed(source, "answered something that is not a dead-letter list");
        }
        catch (Exception ex) when (ex is HttpRequestException or JsonException or NotSupportedException or InvalidOperationException
            || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            return Failed(source, ex is OperationCanceledException ? $"no answer within {_timeout.TotalSeconds:0.#} s" : ex.Message);
        }
    }

    private static bool IsWhole(ServiceDeadLetter? letter) =>
        letter is { MessageId: not null, Type: not null, CorrelationId: not null, Source: not null, Consumer: not null, Error: not null, Status: not null }
        && (letter.Attempts ?? []).All(a => a is { Error: not null });

    private SourceListing Failed(DeadLetterSource source, string error)
    {
        LogSourceFailed(_logger, source.Name, error);
        return new SourceListing(source, null, error);
    }

    /// <summary>Asks <paramref name="source"/> to replay dead letter <paramref name="id"/> for <paramref name="actor"/>.</summary>
    public async Task<(ReplayOutcome Outcome, string Detail)> ReplayAsync(DeadLetterSource source, long id, string actor, CancellationToken cancellationToken)
    {
        var body = JsonSerializer.SerializeToUtf8Bytes(new ServiceReplayRequest(actor), DeadLetterJsonContext.Default.ServiceReplayRequest);
        try
        {
            using var response = await SendAsync(HttpMethod.Post, source.ReplayUrl(id), body, cancellationToken);
            var detail = await DetailAsync(response, cancellationToken);
            return response.StatusCode switch
            {
                HttpStatusCode.Accepted or HttpStatusCode.OK => (ReplayOutcome.Replaying, ""),
                HttpStatusCode.NotFound => (ReplayOutcome.NotFound, $"'{source.Name}' has no dead letter {id}."),
                HttpStatusCode.Conflict => (ReplayOutcome.Conflict, detail.Length > 0 ? detail[2..] : $"Dead letter {id} of '{source.Name}' is not dead."),
                HttpStatusCode.Unauthorized => (ReplayOutcome.Unavailable, $"'{source.Name}' refused the coordinator's signature: its callback secret differs from --callback-secret."),
                _ => (ReplayOutcome.Unavailable, $"'{source.Name}' answered {(int)response.StatusCode}{detail}."),
            };
        }
        catch (Exception ex) when (ex is HttpRequestException || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            var why = ex is OperationCanceledException ? $"no answer within {_timeout.TotalSeconds:0.#} s" : ex.Message;
            LogSourceFailed(_logger, source.Name, why);
            return (ReplayOutcome.Unavailable, $"'{source.Name}' is unreachable: {why}");
        }
    }

    private async Task<HttpResponseMessage> SendAsync(HttpMethod method, Uri url, byte[] body, CancellationToken cancellationToken)
    {
        if (!_allowlist.IsAllowed(url.ToString()))
        {
            throw new HttpRequestException("not called: the URL is outside the participant allowlist");
        }

        using var request = new HttpRequestMessage(method, url);
        var head = Encoding.UTF8.GetBytes($"{method.Method} {url.AbsolutePath}\n");
        request.Headers.TryAddWithoutValidation(CallbackSignature.HeaderName, CallbackSignature.Sign(_secret, [.. head, .. body], _time.GetUtcNow()));
        if (method == HttpMethod.Post)
        {
            request.Content = new ByteArrayContent(body);
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        }

        using var timeout = new CancellationTokenSource(_timeout, _time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, cancellationToken);
        var response = await _http.SendAsync(request, HttpCompletionOption.ResponseContentRead, linked.Token);
        return response;
    }

    /// <summary>": " and the problem's detail, when the answer is a problem with one.</summary>
    private static async Task<string> DetailAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        if (response.Content.Headers.ContentType?.MediaType is not ("application/problem+json" or "application/json"))
        {
            return "";
        }

        try
        {
            var problem = await response.Content.ReadFromJsonAsync(DeadLetterJsonContext.Default.ServiceProblem, cancellationToken);
            return problem?.Detail is { Length: > 0 } detail ? ": " + (detail.Length <= 300 ? detail : detail[..300] + "…") : "";
        }
        catch (JsonException)
        {
            return "";
        }
    }

    public void Dispose() => _http.Dispose();

    [LoggerMessage(EventId = 3140, Level = LogLevel.Warning, Message = "Dead-letter source {Source} failed: {Error}")]
    private static partial void LogSourceFailed(ILogger logger, string source, string error);
}
