# CPack settings for the Debian package (cpack -G DEB): one package,
# "mailpool", with the daemon, tools, library, header, units and manual
# pages; maintainer scripts from packaging/deb. Build it from a tree
# configured with -DCMAKE_INSTALL_PREFIX=/usr for multiarch library paths.

set(MAILPOOL_DEB_MAINTAINER "mailpool maintainers <mailpool@example.org>"
    CACHE STRING "Maintainer field of the Debian package")

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME mailpool)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "local mail submission daemon with pooled SMTP relay sessions")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "mailpoold accepts mail from local programs over a Unix socket and hands it
to SMTP relays over pooled, already authenticated TLS sessions, either
waiting for the relay's answer or from a durable spool. The package also
contains mailpoolctl, the sendmail-compatible mailpool-sendmail and the
client library libmailpool.")
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${MAILPOOL_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_SECTION mail)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)

# dpkg-shlibdeps derives the library dependencies from the binaries; without
# it (no dpkg-dev) the Debian 12 names are declared by hand.
find_program(MAILPOOL_DPKG_SHLIBDEPS dpkg-shlibdeps)
if(MAILPOOL_DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  set(CPACK_DEBIAN_PACKAGE_DEPENDS
      "libc6, libevent-2.1-7, libevent-pthreads-2.1-7, libwolfssl35, libconfig9, libsystemd0")
endif()
# Shared library: shlibs file and ldconfig trigger.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)

# The maintainer scripts name installed paths, as seen inside the package.
set(MAILPOOL_DEB_BINDIR ${CPACK_PACKAGING_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR})
foreach(dir SYSUSERSDIR TMPFILESDIR)
  if(IS_ABSOLUTE "${MAILPOOL_${dir}}")
    set(MAILPOOL_DEB_${dir} ${MAILPOOL_${dir}})
  else()
    set(MAILPOOL_DEB_${dir} ${CPACK_PACKAGING_INSTALL_PREFIX}/${MAILPOOL_${dir}})
  endif()
endforeach()
if(MAILPOOL_INSTALL_SENDMAIL_LINKS)
  message(WARNING "MAILPOOL_INSTALL_SENDMAIL_LINKS: the .deb would ship /usr/sbin/sendmail itself; "
                  "it normally registers it with update-alternatives instead")
endif()
set(debdir ${CMAKE_CURRENT_BINARY_DIR}/deb-control)
foreach(script postinst prerm postrm)
  configure_file(${PROJECT_SOURCE_DIR}/packaging/deb/${script}.in ${debdir}/${script} @ONLY
                 FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
                                  WORLD_READ WORLD_EXECUTE)
endforeach()
# The example config is a conffile: an edited copy survives upgrades.
file(WRITE ${debdir}/conffiles "${MAILPOOL_CONFDIR}/mailpool.conf\n")
# libmailpool.so.0 is new to the linker cache.
file(WRITE ${debdir}/triggers "activate-noawait ldconfig\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${debdir}/postinst ${debdir}/prerm ${debdir}/postrm
                                       ${debdir}/conffiles ${debdir}/triggers)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)

include(CPack)
