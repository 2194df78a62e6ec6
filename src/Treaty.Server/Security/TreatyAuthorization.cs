using System.Globalization;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.RateLimiting;
using Treaty.Core.Contracts;

namespace Treaty.Server.Security;

/// <summary>Keys, roles, the rate limiter and the body-size guard, wired into the host.</summary>
internal static partial class TreatyAuthorization
{
    public const string ClientPolicy = "TreatyClient";
    public const string OperatorPolicy = "TreatyOperator";
    public const string ClientRole = "treaty-client";
    public const string OperatorRole = "treaty-operator";

    /// <summary>Clients (and operators) may call this endpoint.</summary>
    public static TBuilder RequireTreatyClient<TBuilder>(this TBuilder builder)
        where TBuilder : IEndpointConventionBuilder => builder.RequireAuthorization(ClientPolicy);

    /// <summary>Only operators may call this endpoint (also what an unmarked endpoint requires).</summary>
    public static TBuilder RequireTreatyOperator<TBuilder>(this TBuilder builder)
        where TBuilder : IEndpointConventionBuilder => builder.RequireAuthorization(OperatorPolicy);

    /// <summary>The <c>TreatyKey</c> scheme, the two policies (the fallback: operator), the allowlist and the rate limiter.</summary>
    public static IServiceCollection AddTreatySecurity(this IServiceCollection services, TreatyServerOptions options)
    {
        services.AddSingleton(ApiKeyRing.From(options));
        // The base handler logs every challenge at Information: one line per 401 would drown the log.
        services.Configure<LoggerFilterOptions>(filters => filters.AddFilter(typeof(TreatyKeyAuthenticationHandler).FullName, LogLevel.Warning));
        services.AddSingleton(ParticipantAllowlist.From(options));
        services.AddAuthentication(TreatyKeyAuthenticationHandler.SchemeName)
            .AddScheme<AuthenticationSchemeOptions, TreatyKeyAuthenticationHandler>(TreatyKeyAuthenticationHandler.SchemeName, null);
        var client = new AuthorizationPolicyBuilder(TreatyKeyAuthenticationHandler.SchemeName).RequireRole(ClientRole).Build();
        var @operator = new AuthorizationPolicyBuilder(TreatyKeyAuthenticationHandler.SchemeName).RequireRole(OperatorRole).Build();
        services.AddAuthorizationBuilder()
            .AddPolicy(ClientPolicy, client)
            .AddPolicy(OperatorPolicy, @operator)
            .SetFallbackPolicy(@operator); // a new endpoint nobody marked is for operators, never open.
        if (options.RateLimitPerSecond > 0)
        {
            services.AddRateLimiter(limiter =>
            {
                limiter.GlobalLimiter = PartitionedRateLimiter.Create<HttpContext, string>(context =>
                    context.Request.Path.StartsWithSegments("/healthz") || context.Request.Path.StartsWithSegments("/readyz")
                        ? RateLimitPartition.GetNoLimiter("health")
                        : RateLimitPartition.GetTokenBucketLimiter(PartitionOf(context), _ => new TokenBucketRateLimiterOptions
                        {
                            TokenLimit = options.RateLimitPerSecond,
                            TokensPerPeriod = options.RateLimitPerSecond,
                            ReplenishmentPeriod = TimeSpan.FromSeconds(1),
                            QueueLimit = 0,
                            AutoReplenishment = true,
                        }));
                limiter.OnRejected = (rejected, _) =>
                {
                    var context = rejected.HttpContext;
                    var after = rejected.Lease.TryGetMetadata(MetadataName.RetryAfter, out var wait) ? Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds)) : 1;
                    context.Response.Headers.RetryAfter = after.ToString(CultureInfo.InvariantCulture);
                    return new ValueTask(Problems.Create(StatusCodes.Status429TooManyRequests, ProblemTypes.RateLimited, "Too many requests",
                        $"At most {options.RateLimitPerSecond} requests per second per key; retry after {after} s.", context).ExecuteAsync(context));
                };
            });
        }

        services.AddHostedService<SecurityStartupCheck>();
        return services;
    }

    /// <summary>The key's name when one authenticated, else the remote address (so guessing keys is limited too).</summary>
    private static string PartitionOf(HttpContext context) =>
        context.User.Identity is { IsAuthenticated: true, Name: { } name } && name.StartsWith("key:", StringComparison.Ordinal)
            ? name
            : "ip:" + context.Connection.RemoteIpAddress;

    /// <summary>Body-size guard, authentication, rate limiter, authorization, in that order.</summary>
    public static WebApplication UseTreatySecurity(this WebApplication app, TreatyServerOptions options)
    {
        app.Use((context, next) =>
        {
            // Kestrel enforces the limit only when an endpoint reads the body; answer every
            // endpoint alike, before authentication, when the declared length is already too much.
            if (context.Request.ContentLength > options.MaxRequestBodyBytes)
            {
                return Problems.Create(StatusCodes.Status413PayloadTooLarge, ProblemTypes.PayloadTooLarge, "Request body too large",
                    $"The body exceeds {options.MaxRequestBodyBytes} bytes.", context).ExecuteAsync(context);
            }

            return next(context);
        });
        app.UseAuthentication();
        if (options.RateLimitPerSecond > 0)
        {
            app.UseRateLimiter();
        }

        app.UseAuthorization();
        return app;
    }

    /// <summary>The audited actor of an operator action: <c>key:NAME</c>, or <c>anonymous@ADDRESS</c> without keys.</summary>
    public static string ActorOf(HttpContext context) =>
        context.User.Identity?.Name is { Length: > 0 } name ? name : $"anonymous@{context.Connection.RemoteIpAddress}";

    /// <summary>Says at start how the server is protected, and stops a keyless server that ended up
    /// listening beyond loopback (Kestrel configured around <see cref="TreatyServerOptions.Urls"/>).</summary>
    internal sealed partial class SecurityStartupCheck(
        ApiKeyRing keys, ParticipantAllowlist allowlist, TreatyServerOptions options, IServer server,
        IHostApplicationLifetime lifetime, ILogger<SecurityStartupCheck> logger) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken)
        {
            if (keys.IsEmpty)
            {
                LogNoKeys(logger);
                lifetime.ApplicationStarted.Register(() =>
                {
                    var addresses = server.Features.Get<IServerAddressesFeature>()?.Addresses ?? [];
                    if (addresses.FirstOrDefault(a => !SecuritySettings.IsLoopbackUrl(a)) is { } exposed)
                    {
                        LogExposed(logger, exposed);
                        lifetime.StopApplication();
                    }
                });
            }
            else
            {
                LogKeys(logger, keys.Keys.Count(k => k.Role == KeyRole.Client), keys.Keys.Count(k => k.Role == KeyRole.Operator),
                    string.Join(", ", keys.Keys.Select(k => k.Name)));
            }

            LogAllowlist(logger, allowlist.LoopbackOnly ? "loopback only" : string.Join(", ", options.AllowedParticipants),
                options.RateLimitPerSecond > 0 ? $"{options.RateLimitPerSecond}/s per key" : "off");
            return Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        [LoggerMessage(EventId = 3011, Level = LogLevel.Warning, Message = "No API keys configured; accepting unauthenticated requests on loopback only")]
        private static partial void LogNoKeys(ILogger logger);

        [LoggerMessage(EventId = 3013, Level = LogLevel.Information, Message = "API keys: {Clients} client and {Operators} operator keys ({Names})")]
        private static partial void LogKeys(ILogger logger, int clients, int operators, string names);

        [LoggerMessage(EventId = 3014, Level = LogLevel.Critical, Message = "No API keys configured but listening on {Address}, beyond loopback; stopping")]
        private static partial void LogExposed(ILogger logger, string address);

        [LoggerMessage(EventId = 3015, Level = LogLevel.Information, Message = "Participants allowed: {Allowlist}; rate limit: {RateLimit}")]
        private static partial void LogAllowlist(ILogger logger, string allowlist, string rateLimit);
    }
}
