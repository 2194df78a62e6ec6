using System.Diagnostics;
using Treaty.Cli;
using Treaty.Testing;

namespace Treaty.Cli.Tests;

/// <summary>
/// Relative paths are relative to where the user runs the command: <c>--data-dir ./data</c> lands
/// in the current directory, not next to the binary or in the project's folder under <c>dotnet run</c>.
/// </summary>
public sealed class WorkingDirectoryTests
{
    [Fact]
    public async Task Serve_RelativeDataDir_DatabaseLandsInTheCurrentDirectory()
    {
        using var cwd = new TempDir("treaty-cwd");
        var port = ChildProcess.FreePort();

        await RunUntilHealthyAsync(
            cwd.Path, [Path.Combine(AppContext.BaseDirectory, "treaty.dll"), "serve", "--urls", $"http://127.0.0.1:{port}", "--data-dir", "./data"],
            $"http://127.0.0.1:{port}/healthz");

        File.Exists(Path.Combine(cwd.Path, "data", "treaty.db")).ShouldBeTrue(Listing(cwd.Path));
        File.Exists(Path.Combine(AppContext.BaseDirectory, "data", "treaty.db")).ShouldBeFalse("the database went next to the binary");
    }

    [Fact]
    public async Task Shop_RelativeDataDir_DatabaseLandsInTheCurrentDirectory()
    {
        using var cwd = new TempDir("treaty-cwd");
        var port = ChildProcess.FreePort();

        await RunUntilHealthyAsync(
            cwd.Path, [Path.Combine(AppContext.BaseDirectory, "Shop.dll"), "--service", "payment", "--urls", $"http://127.0.0.1:{port}", "--data-dir", "./data/payment"],
            $"http://127.0.0.1:{port}/healthz");

        File.Exists(Path.Combine(cwd.Path, "data", "payment", "payment.db")).ShouldBeTrue(Listing(cwd.Path));
    }

    /// <summary>
    /// <c>dotnet run</c> of a Web SDK project starts the program in the project's folder unless the
    /// project says otherwise (Microsoft.NET.Sdk.Web.ProjectSystem.targets sets RunWorkingDirectory);
    /// the CLI and the Shop say otherwise, so <c>dotnet run</c> keeps the caller's directory.
    /// </summary>
    [Theory]
    [InlineData("src/Treaty.Cli")]
    [InlineData("samples/Shop")]
    public async Task DotnetRun_StartsInTheCallersDirectory(string project)
    {
        var info = new ProcessStartInfo(ChildProcess.DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = RepositoryRoot(),
        };
        foreach (var arg in new[] { "msbuild", project, "-getProperty:RunWorkingDirectory", "-getProperty:EnableDefaultRunWorkingDirectory" })
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var output = await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();

        process.ExitCode.ShouldBe(0, output + await process.StandardError.ReadToEndAsync());
        output.ShouldContain("\"RunWorkingDirectory\": \"\"", customMessage: output); // empty: the caller's directory
        output.ShouldContain("\"EnableDefaultRunWorkingDirectory\": \"false\"", customMessage: output);
    }

    /// <summary>Runs the command until <paramref name="healthUrl"/> answers 2xx, then kills it; returns what it printed.</summary>
    internal static async Task<string> RunUntilHealthyAsync(string workingDirectory, string[] args, string healthUrl, IDictionary<string, string>? environment = null)
    {
        var info = new ProcessStartInfo(ChildProcess.DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        info.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[key] = value;
        }

        using var process = Process.Start(info)!;
        var output = new System.Text.StringBuilder();
        process.OutputDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        process.ErrorDataReceived += (_, e) => { lock (output) { output.AppendLine(e.Data); } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
            var deadline = Stopwatch.StartNew();
            while (true)
            {
                process.HasExited.ShouldBeFalse($"exited with {(process.HasExited ? process.ExitCode : 0)}:\n{output}");
                try
                {
                    using var response = await http.GetAsync(healthUrl);
                    if (response.IsSuccessStatusCode)
                    {
                        break;
                    }
                }
                catch (HttpRequestException)
                {
                    // not listening yet
                }
                catch (TaskCanceledException)
                {
                    // not answering yet
                }

                deadline.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(60), output.ToString());
                await Task.Delay(100);
            }
        }
        finally
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
        }

        lock (output)
        {
            return output.ToString();
        }
    }

    private static string Listing(string root) =>
        "files under the working directory: " + string.Join(", ", Directory.EnumerateFileSystemEntries(root, "*", SearchOption.AllDirectories));

    internal static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Treaty.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException("Treaty.sln not found above " + AppContext.BaseDirectory);
    }
}
