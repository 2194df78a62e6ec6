using System.Security.Claims;
using System.Text.Encodings.Web;
using Microsoft.AspNetCore.Authentication;
using Microsoft.Extensions.Options;
using Treaty.Core.Contracts;

namespace Treaty.Server.Security;

/// <summary>
/// The <c>TreatyKey</c> scheme: <c>Authorization: Bearer KEY</c> against the configured keys. The
/// principal's name is the audited actor (<c>key:NAME</c>). With no keys configured every request
/// is an operator named <c>anonymous@ADDRESS</c> (the server then listens on loopback only).
/// Challenges and refusals are problem+json.
/// </summary>
internal sealed partial class TreatyKeyAuthenticationHandler(
    IOptionsMonitor<AuthenticationSchemeOptions> options,
    ILoggerFactory loggerFactory,
    UrlEncoder encoder,
    ApiKeyRing keys)
    : AuthenticationHandler<AuthenticationSchemeOptions>(options, loggerFactory, encoder)
{
    public const string SchemeName = "TreatyKey";

    private const string BearerPrefix = "Bearer ";

    protected override Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        if (keys.IsEmpty)
        {
            return Task.FromResult(Success($"anonymous@{Context.Connection.RemoteIpAddress}", KeyRole.Operator));
        }

        var header = Request.Headers.Authorization.ToString();
        if (string.IsNullOrEmpty(header))
        {
            return Task.FromResult(AuthenticateResult.NoResult());
        }

        if (!header.StartsWith(BearerPrefix, StringComparison.OrdinalIgnoreCase))
        {
            return Task.FromResult(AuthenticateResult.Fail("Use Authorization: Bearer KEY."));
        }

        var key = keys.Match(header[BearerPrefix.Length..].Trim());
        if (key is null)
        {
            // The address only: the presented key is never logged, not even a part of it.
            LogRejected(Logger, Context.Connection.RemoteIpAddress?.ToString() ?? "-", Request.Path.Value ?? "");
            return Task.FromResult(AuthenticateResult.Fail("The key is not one this coordinator accepts."));
        }

        return Task.FromResult(Success("key:" + key.Name, key.Role));
    }

    private AuthenticateResult Success(string actor, KeyRole role)
    {
        var claims = new List<Claim> { new(ClaimTypes.Name, actor), new(ClaimTypes.Role, TreatyAuthorization.ClientRole) };
        if (role == KeyRole.Operator)
        {
            claims.Add(new(ClaimTypes.Role, TreatyAuthorization.OperatorRole));
        }

        var principal = new ClaimsPrincipal(new ClaimsIdentity(claims, SchemeName));
        return AuthenticateResult.Success(new AuthenticationTicket(principal, SchemeName));
    }

    protected override async Task HandleChallengeAsync(AuthenticationProperties properties)
    {
        var result = await HandleAuthenticateOnceSafeAsync();
        Response.Headers.WWWAuthenticate = result.Failure is null ? "Bearer" : "Bearer error=\"invalid_token\"";
        var detail = result.Failure is null
            ? "Send a client or operator key as Authorization: Bearer KEY."
            : result.Failure.Message;
        await Problems.Create(StatusCodes.Status401Unauthorized, ProblemTypes.Unauthorized, "Unauthorized", detail, Context).ExecuteAsync(Context);
    }

    protected override Task HandleForbiddenAsync(AuthenticationProperties properties) =>
        Problems.Create(StatusCodes.Status403Forbidden, ProblemTypes.Forbidden, "Forbidden",
            $"{Context.User.Identity?.Name} is a client key; {Request.Method} {Request.Path} needs an operator key.", Context).ExecuteAsync(Context);

    [LoggerMessage(EventId = 3012, Level = LogLevel.Warning, Message = "Rejected an unknown API key from {RemoteAddress} on {Path}")]
    private static partial void LogRejected(ILogger logger, string remoteAddress, string path);
}
