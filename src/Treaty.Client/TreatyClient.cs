using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Treaty.Core.Contracts;
using Treaty.Core.Serialization;

namespace Treaty.Client;

/// <summary>
/// Client of the coordinator's HTTP API (<c>/api/v1</c>): submit transactions, read them, wait for
/// them to end, and the operator actions retry and abort.
/// </summary>
/// <remarks>
/// Error responses become <see cref="TreatyApiException"/> carrying the problem details; connection
/// failures and timeouts stay <see cref="HttpRequestException"/> / <see cref="TaskCanceledException"/>
/// (their outcome is unknown: submitting again with the same gid is safe). Thread-safe.
/// </remarks>
public sealed class TreatyClient : IDisposable
{
    // Polling cadence of WaitAsync: quick at first (most sagas end within milliseconds), then
    // backing off so a long wait does not hammer the coordinator.
    private static readonly TimeSpan FirstPollDelay = TimeSpan.FromMilliseconds(25);
    private static readonly TimeSpan MaxPollDelay = TimeSpan.FromSeconds(1);
    private const int MaxErrorBodyChars = 64 * 1024;

    private readonly HttpClient _http;
    private readonly bool _ownsHttp;
    private readonly Uri _base;
    private readonly TimeProvider _timeProvider;

    /// <summary>Uses <paramref name="http"/>, whose <see cref="HttpClient.BaseAddress"/> is the coordinator.</summary>
    /// <param name="http">The HTTP client; this object does not dispose it.</param>
    public TreatyClient(HttpClient http)
        : this(http, TimeProvider.System)
    {
    }

    /// <summary>Uses <paramref name="http"/> and <paramref name="timeProvider"/> for the waits of <see cref="WaitAsync"/>.</summary>
    /// <param name="http">The HTTP client; its <see cref="HttpClient.BaseAddress"/> is the coordinator. Not disposed by this object.</param>
    /// <param name="timeProvider">The clock.</param>
    public TreatyClient(HttpClient http, TimeProvider timeProvider)
        : this(http, timeProvider, ownsHttp: false)
    {
    }

    /// <summary>Creates its own <see cref="HttpClient"/> for the coordinator at <paramref name="baseAddress"/>.</summary>
    /// <param name="baseAddress">The coordinator, e.g. <c>http://127.0.0.1:5000</c>.</param>
    public TreatyClient(Uri baseAddress)
        : this(baseAddress, apiKey: null)
    {
    }

    /// <summary>Creates its own <see cref="HttpClient"/> for the coordinator at <paramref name="baseAddress"/>,
    /// sending <paramref name="apiKey"/> as <c>Authorization: Bearer</c> on every request.</summary>
    /// <param name="baseAddress">The coordinator, e.g. <c>http://127.0.0.1:5000</c>.</param>
    /// <param name="apiKey">A client or operator key of the coordinator (<c>--api-key</c>, <c>--operator-key</c>); null or empty sends none.</param>
    public TreatyClient(Uri baseAddress, string? apiKey)
        : this(CreateHttpClient(baseAddress, apiKey), TimeProvider.System, ownsHttp: true)
    {
    }

    /// <summary>A client that owns its <see cref="HttpClient"/> and reads time from <paramref name="timeProvider"/>.</summary>
    internal static TreatyClient Create(Uri baseAddress, TimeProvider timeProvider, string? apiKey = null) =>
        new(CreateHttpClient(baseAddress, apiKey), timeProvider, ownsHttp: true);

    private TreatyClient(HttpClient http, TimeProvider timeProvider, bool ownsHttp)
    {
        ArgumentNullException.ThrowIfNull(http);
        ArgumentNullException.ThrowIfNull(timeProvider);
        if (http.BaseAddress is not { IsAbsoluteUri: true } baseAddress)
        {
            throw new ArgumentException("HttpClient.BaseAddress must be the coordinator's absolute URL.", nameof(http));
        }

        _http = http;
        _ownsHttp = ownsHttp;
        _timeProvider = timeProvider;
        // A base without a trailing slash would lose its last path segment when resolving "api/v1/...".
        _base = baseAddress.AbsoluteUri.EndsWith('/') ? baseAddress : new Uri(baseAddress.AbsoluteUri + "/");
    }

    /// <summary>The coordinator's address.</summary>
    public Uri BaseAddress => _base;

    /// <summary>Starts building an orchestrated saga to submit through this client.</summary>
    /// <param name="gid">The transaction id; null lets the coordinator generate one. Choose one
    /// derived from your business key (e.g. <c>checkout-{orderId}</c>) so a retried submit is
    /// recognised as the same transaction.</param>
    public SagaBuilder Saga(string? gid = null) => new(this, gid);

    /// <summary>Starts building a TCC (Try-Confirm/Cancel) transaction to submit through this client.</summary>
    /// <param name="gid">The transaction id; null lets the coordinator generate one.</param>
    public TccBuilder Tcc(string? gid = null) => new(this, gid);

    /// <summary>Starts building a two-phase commit to submit through this client.</summary>
    /// <param name="gid">The transaction id; null lets the coordinator generate one.</param>
    public TwoPhaseCommitBuilder TwoPhaseCommit(string? gid = null) => new(this, gid);

    /// <summary>Starts building a three-phase commit to submit through this client.</summary>
    /// <param name="gid">The transaction id; null lets the coordinator generate one.</param>
    public ThreePhaseCommitBuilder ThreePhaseCommit(string? gid = null) => new(this, gid);

    /// <summary>Starts building a two-phase message to register and send through this client
    /// (see <see cref="MessageBuilder.ExecuteAsync"/>).</summary>
    /// <param name="gid">The message id; null lets the coordinator generate one. Derive it from the
    /// business change it announces (e.g. <c>order-placed-{orderId}</c>).</param>
    public MessageBuilder Message(string? gid = null) => new(this, gid);

    /// <summary>Submits a transaction (<c>POST /api/v1/transactions</c>). Idempotent on the gid.</summary>
    /// <param name="request">The transaction definition.</param>
    /// <param name="wait">Hold the answer until the transaction ends or this much time passes.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The transaction as it stands (terminal when it ended within <paramref name="wait"/>).</returns>
    /// <exception cref="TreatyApiException">400 (invalid definition, naming the fields), 409 (the gid
    /// exists with a different definition), or another error answer.</exception>
    public async Task<TransactionView> SubmitAsync(SubmitTransactionRequest request, TimeSpan? wait = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var path = "api/v1/transactions";
        if (wait is { } w)
        {
            path += "?wait=" + FormatWait(w);
        }

        using var content = JsonContent.Create(request, TreatyJsonContext.Default.SubmitTransactionRequest);
        using var response = await _http.PostAsync(Resolve(path), content, cancellationToken).ConfigureAwait(false);
        return await ReadAsync(response, TreatyJsonContext.Default.TransactionView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Two-phase message: the sender's local transaction committed, deliver the registered message
    /// (<c>POST /api/v1/transactions/{gid}/submit</c>). Repeating it is harmless.
    /// </summary>
    /// <param name="gid">The registered message.</param>
    /// <param name="wait">Hold the answer until delivery ends or this much time passes.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The message, delivering (<c>running</c>) or delivered (<c>committed</c>).</returns>
    /// <exception cref="TreatyApiException">404 when the gid is unknown; 409 when the message was
    /// aborted (it will never be delivered) or the gid is not a message.</exception>
    public async Task<TransactionView> SubmitPreparedAsync(string gid, TimeSpan? wait = null, CancellationToken cancellationToken = default)
    {
        var query = wait is { } w ? "?wait=" + FormatWait(w) : "";
        using var response = await _http.PostAsync(TransactionUri(gid, "/submit" + query), content: null, cancellationToken).ConfigureAwait(false);
        return await ReadAsync(response, TreatyJsonContext.Default.TransactionView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Reports events of choreographed sagas to the coordinator (<c>POST /api/v1/choreography/events</c>),
    /// so it can show each saga's timeline and flag one that stops moving. The first event of a gid
    /// creates its transaction (protocol <c>choreography</c>); an event whose message id was reported
    /// before changes nothing, so an outbox relay may report again after a crash.
    /// </summary>
    /// <param name="events">1 to 100 events, recorded in this order.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>Per event: <c>recorded</c> or <c>duplicate</c>, and its saga's status.</returns>
    /// <exception cref="TreatyApiException">400 naming the invalid fields (then nothing was recorded),
    /// 409 when a gid belongs to a transaction of another protocol, or another error answer.</exception>
    public async Task<ChoreographyReportView> ReportEventsAsync(IEnumerable<ChoreographyEventRequest> events, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(events);
        using var content = JsonContent.Create(new ReportChoreographyEventsRequest([.. events]), TreatyJsonContext.Default.ReportChoreographyEventsRequest);
        using var response = await _http.PostAsync(Resolve("api/v1/choreography/events"), content, cancellationToken).ConfigureAwait(false);
        return await ReadAsync(response, TreatyJsonContext.Default.ChoreographyReportView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reads one transaction (<c>GET /api/v1/transactions/{gid}</c>).</summary>
    /// <returns>The transaction, or null when the coordinator does not know the gid.</returns>
    /// <exception cref="TreatyApiException">An error answer other than 404.</exception>
    public async Task<TransactionView?> GetAsync(string gid, CancellationToken cancellationToken = default)
    {
        using var response = await _http.GetAsync(TransactionUri(gid, ""), cancellationToken).ConfigureAwait(false);
        if (response.StatusCode == HttpStatusCode.NotFound)
        {
            return null;
        }

        return await ReadAsync(response, TreatyJsonContext.Default.TransactionView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>One page of the listing (<c>GET /api/v1/transactions</c>).</summary>
    /// <param name="query">Filters and paging; null for the first page of everything.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    public async Task<TransactionListView> ListAsync(TransactionListQuery? query = null, CancellationToken cancellationToken = default)
    {
        var path = "api/v1/transactions" + (query?.ToQueryString() ?? "");
        using var response = await _http.GetAsync(Resolve(path), cancellationToken).ConfigureAwait(false);
        return await ReadAsync(response, TreatyJsonContext.Default.TransactionListView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>How many transactions match <paramref name="query"/>'s filters, by status (its status, limit and cursor are ignored).</summary>
    public async Task<TransactionCountsView> CountAsync(TransactionListQuery? query = null, CancellationToken cancellationToken = default)
    {
        var filters = (query ?? new TransactionListQuery()) with { Status = null, Limit = null, Cursor = null };
        using var response = await _http.GetAsync(Resolve("api/v1/transaction-counts" + filters.ToQueryString()), cancellationToken).ConfigureAwait(false);
        return await ReadAsync(response, TreatyJsonContext.Default.TransactionCountsView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The coordinator instances holding unfinished transactions, and the one that answered
    /// (<c>GET /api/v1/instances</c>).</summary>
    public async Task<InstanceListView> ListInstancesAsync(CancellationToken cancellationToken = default)
    {
        using var response = await _http.GetAsync(Resolve("api/v1/instances"), cancellationToken).ConfigureAwait(false);
        return await ReadAsync(response, TreatyJsonContext.Default.InstanceListView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Every transaction matching <paramref name="query"/>, following the cursor page by page.</summary>
    /// <param name="query">Filters (its <see cref="TransactionListQuery.Cursor"/> is the starting point).</param>
    /// <param name="cancellationToken">Cancels the enumeration.</param>
    public async IAsyncEnumerable<TransactionSummaryView> ListAllAsync(
        TransactionListQuery? query = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var page = query ?? new TransactionListQuery();
        while (true)
        {
            var result = await ListAsync(page, cancellationToken).ConfigureAwait(false);
            foreach (var item in result.Items)
            {
                yield return item;
            }

            if (string.IsNullOrEmpty(result.NextCursor) || result.NextCursor == page.Cursor || result.Items.Count == 0)
            {
                yield break;
            }

            page = page with { Cursor = result.NextCursor };
        }
    }

    /// <summary>The timeline of a transaction (<c>GET /api/v1/transactions/{gid}/events</c>).</summary>
    /// <exception cref="TreatyApiException">404 when the gid is unknown, or another error answer.</exception>
    public async Task<EventListView> GetEventsAsync(string gid, CancellationToken cancellationToken = default)
    {
        using var response = await _http.GetAsync(TransactionUri(gid, "/events"), cancellationToken).ConfigureAwait(false);
        return await ReadAsync(response, TreatyJsonContext.Default.EventListView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Operator action: retry the waiting operations of a (typically stuck) transaction now.</summary>
    /// <exception cref="TreatyApiException">404 when the gid is unknown; 409 when the transaction is in a state that cannot be retried.</exception>
    public async Task<TransactionView> RetryAsync(string gid, CancellationToken cancellationToken = default)
    {
        using var response = await _http.PostAsync(TransactionUri(gid, "/retry"), content: null, cancellationToken).ConfigureAwait(false);
        return await ReadAsync(response, TreatyJsonContext.Default.TransactionView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Operator action: abort a transaction that has not passed its point of no return.</summary>
    /// <param name="gid">The transaction.</param>
    /// <param name="reason">Why, for the audit log; optional.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <exception cref="TreatyApiException">404 when the gid is unknown; 409 when it can no longer be aborted.</exception>
    public async Task<TransactionView> AbortAsync(string gid, string? reason = null, CancellationToken cancellationToken = default)
    {
        using var content = JsonContent.Create(new AbortRequest { Reason = reason }, TreatyJsonContext.Default.AbortRequest);
        using var response = await _http.PostAsync(TransactionUri(gid, "/abort"), content, cancellationToken).ConfigureAwait(false);
        return await ReadAsync(response, TreatyJsonContext.Default.TransactionView, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Polls the transaction, backing off from 25 ms to 1 s between reads, until it is terminal or
    /// <paramref name="timeout"/> has passed.
    /// </summary>
    /// <returns>The last state read: terminal unless the timeout passed first (check <see cref="TransactionViewExtensions.IsTerminal(TransactionView)"/>).</returns>
    /// <exception cref="TreatyApiException">404 when the gid is unknown, or another error answer.</exception>
    public async Task<TransactionView> WaitAsync(string gid, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(timeout, TimeSpan.Zero);
        var deadline = _timeProvider.GetUtcNow() + timeout;
        var delay = FirstPollDelay;
        while (true)
        {
            var view = await GetAsync(gid, cancellationToken).ConfigureAwait(false)
                ?? throw new TreatyApiException(404, new ProblemView(
                    ProblemTypes.NotFound, "Not Found", 404, $"No transaction with gid '{gid}'.", null, null));
            var left = deadline - _timeProvider.GetUtcNow();
            if (view.IsTerminal() || left <= TimeSpan.Zero)
            {
                return view;
            }

            await Task.Delay(NextPollDelay(delay, left), _timeProvider, cancellationToken).ConfigureAwait(false);
            delay = NextPollDelay(delay * 2, MaxPollDelay);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_ownsHttp)
        {
            _http.Dispose();
        }
    }

    /// <summary>The <c>?wait=</c> value: whole seconds as <c>5s</c>, anything finer as milliseconds (<c>1500ms</c>).</summary>
    internal static string FormatWait(TimeSpan wait)
    {
        var ms = Math.Max(0, (long)Math.Ceiling(wait.TotalMilliseconds));
        return ms % 1000 == 0
            ? (ms / 1000).ToString(CultureInfo.InvariantCulture) + "s"
            : ms.ToString(CultureInfo.InvariantCulture) + "ms";
    }

    internal static TimeSpan NextPollDelay(TimeSpan wanted, TimeSpan limit) => wanted < limit ? wanted : limit;

    private Uri Resolve(string relative) => new(_base, relative);

    private Uri TransactionUri(string gid, string suffix)
    {
        ArgumentException.ThrowIfNullOrEmpty(gid);
        return Resolve("api/v1/transactions/" + Uri.EscapeDataString(gid) + suffix);
    }

    private static async Task<T> ReadAsync<T>(HttpResponseMessage response, JsonTypeInfo<T> typeInfo, CancellationToken cancellationToken)
    {
        if (!response.IsSuccessStatusCode)
        {
            throw await ToExceptionAsync(response, cancellationToken).ConfigureAwait(false);
        }

        var value = await response.Content.ReadFromJsonAsync(typeInfo, cancellationToken).ConfigureAwait(false);
        return value ?? throw new JsonException($"The coordinator answered {(int)response.StatusCode} with an empty body.");
    }

    internal static async Task<TreatyApiException> ToExceptionAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        var status = (int)response.StatusCode;
        var body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        return new TreatyApiException(status, ParseProblem(status, response.ReasonPhrase, body));
    }

    /// <summary>The problem in <paramref name="body"/>, completed where fields are missing, or one made from the status line.</summary>
    internal static ProblemView ParseProblem(int status, string? reasonPhrase, string? body)
    {
        var title = string.IsNullOrEmpty(reasonPhrase) ? $"HTTP {status}" : reasonPhrase;
        ProblemView? parsed = null;
        if (!string.IsNullOrWhiteSpace(body))
        {
            try
            {
                parsed = JsonSerializer.Deserialize(body, TreatyJsonContext.Default.ProblemView);
            }
            catch (JsonException)
            {
                // Not problem+json (a proxy's HTML page, say): keep the text as the detail.
            }
        }

        if (parsed is null)
        {
            var detail = string.IsNullOrWhiteSpace(body) ? null : body.Length <= MaxErrorBodyChars ? body : body[..MaxErrorBodyChars];
            return new ProblemView("about:blank", title, status, detail, null, null);
        }

        // Deserialization does not enforce non-nullable members: fill what the body left out.
        return parsed with
        {
            Type = string.IsNullOrEmpty(parsed.Type) ? "about:blank" : parsed.Type,
            Title = string.IsNullOrEmpty(parsed.Title) ? title : parsed.Title,
            Status = parsed.Status == 0 ? status : parsed.Status,
        };
    }

    private static HttpClient CreateHttpClient(Uri baseAddress, string? apiKey)
    {
        ArgumentNullException.ThrowIfNull(baseAddress);
        // A long-lived client with a bounded connection lifetime, so DNS changes are picked up.
        var handler = new SocketsHttpHandler { PooledConnectionLifetime = TimeSpan.FromMinutes(2) };
        var http = new HttpClient(handler, disposeHandler: true) { BaseAddress = baseAddress };
        if (!string.IsNullOrEmpty(apiKey))
        {
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", apiKey);
        }

        return http;
    }
}
